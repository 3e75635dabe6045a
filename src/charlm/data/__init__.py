"""From text to batches: corpora (downloaded or local), preprocessing, the vocabulary, windows and
streams, and the LightningDataModule that splits and serves them."""
