"""The board: profiles, the Edge TPU, deploy bundles, boot config, bench and doctor."""
