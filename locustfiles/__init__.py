"""The Locust suite: user classes, their input data, RAM hooks and load shapes.

``locust -f locustfiles`` loads every module here whose name does not start with "_".
"""
