"""The record contract, its validation and storage, the synthetic county, real-data adapters and the
features that training and serving share."""
