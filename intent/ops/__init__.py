"""What operators run beside the workers: the admin endpoint's and Flower's launchers."""
