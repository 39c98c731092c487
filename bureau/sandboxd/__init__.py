"""bureau-sandboxd: starts and stops the machine's sandboxes for the launcher, holding the
capabilities that takes, so that the launcher (which holds the machine key) holds none."""
