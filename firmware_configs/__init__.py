"""Device profiles bundled with edgecls: one TOML file per target board (see README.md and edgecls.device.profiles)."""
