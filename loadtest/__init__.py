"""Capacity testing with Locust: user classes, proxy-timeout judging, thresholds and reports.

Scripts here import their neighbours by name (`import procstat`): `python loadtest/x.py` and
`locust -f loadtest/locustfile.py` put this directory on sys.path. The tests import only
modules without neighbours this way (`from loadtest import proxylimit`).
"""
