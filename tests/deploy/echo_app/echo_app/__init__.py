"""Echo app: a torch-free Flower app used to test the deployment machinery."""
