"""Small, CPU-sized experiments that mirror claims of the paper (run with ``exgramed experiment``)."""
