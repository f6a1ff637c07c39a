"""The device manager console: a browser view of every phone, with assigning."""
