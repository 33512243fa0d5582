"""The supervisor daemon, ``quantd run``: its parts are private."""
