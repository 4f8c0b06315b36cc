"""GMP records: instruments and calibration, reports (excursion, periodic, batch, shipment)."""
