"""GMP records: excursion, periodic, batch and shipment reports, instruments and calibration.

- :mod:`.stats`: the statistics of one series (hold convention, MKT). Pure.
- :mod:`.provenance`, :mod:`.pdf`, :mod:`.twins`: where a report's figures came from, its
  PDF (WeasyPrint, from Jinja2 HTML and print CSS) and its CSV/JSON twins.
- :mod:`.store`: generated reports, kept with their PDF and figures, and their QA review
  signatures.
- :mod:`.calibration`, :mod:`.instruments`: instruments on monitoring points, calibration.
"""
