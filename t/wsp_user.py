"""The User/Group lines for an httpd started by the tests, the demo or the
benchmark: children of a root httpd need an unprivileged user. Standard
library only, so every script can use it."""

import os


def run_user():
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd
    try:
        pwd.getpwnam("www-data")
        grp.getgrnam("www-data")
        return "User www-data\nGroup www-data"
    except KeyError:
        return "User nobody\nGroup nogroup"
