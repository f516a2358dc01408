"""Store drivers, found through the ``gsfs.drivers`` entry-point group."""
