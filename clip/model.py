"""Scaffold: being written."""


def build_model(state_dict):
    raise NotImplementedError
