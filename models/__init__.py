"""Model definitions shipped with the pack (the synthetic-benchmark demo model lives in ``models.demo``)."""
