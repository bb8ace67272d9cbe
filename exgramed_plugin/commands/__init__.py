"""The commands on top: the exgramed CLI, demo, doctor, hub downloads, web UI, recipes launcher, reproduce, and the experiments. Library code never imports them."""
