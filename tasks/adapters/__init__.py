"""Input adapters: public formats -> a source folder in the data contract."""
