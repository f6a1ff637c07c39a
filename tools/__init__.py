"""The ``pnp`` command (``tools.cli``) and every operator command that is not a service: up,
setup, health, tls-cert, assign, simulate, devices, monitor, console-user. Tools sit on top:
they may import the kernel (services/) and any service package; the kernel never imports them."""
