"""The network and its training: U-Net, precision, losses, training targets, the fit loop, fold ensembles."""
