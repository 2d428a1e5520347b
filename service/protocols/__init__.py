"""Wire protocols beside forecast.v1 (``service/servicer.py`` with ``service/convert.py``), each a
servicer and a conversion module in front of the one core, :mod:`service.core`."""
