"""GMP records: reports (excursion, periodic, batch, shipment) and instrument calibration."""
