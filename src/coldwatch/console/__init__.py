"""The console's data layer: page data, server-side downsampling and SVG charts.

- :mod:`coldwatch.console.pages`: :class:`~coldwatch.console.pages.ConsoleData`, the data of
  each page (overview, alarm list, alarm detail, device detail), from
  :func:`~coldwatch.console.pages.open_console_queries` and the configuration;
- :mod:`coldwatch.console.model`: the records, the alarm filters (and their extension
  point) and the device states;
- :mod:`coldwatch.console.downsample`: min/max buckets and LTTB (pure NumPy);
- :mod:`coldwatch.console.chart`: a chart as plain SVG markup (pure);
- :mod:`coldwatch.console.rollup`: per-minute rollups for long charts;
- ``queries_sqlite`` / ``queries_pg``: the SQL of each backend.
"""
