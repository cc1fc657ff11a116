"""Built-in dataset and suite configs (YAML), shipped as package data `fusebench.datasets_cfg`."""
