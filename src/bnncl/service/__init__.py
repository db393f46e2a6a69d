"""The on-device service: ``bnncl learn`` (the loop), ``bnncl predict``, ``bnncl state show``.

:class:`~bnncl.service.session.LearnerSession` is the Python API (deploy/resume, learn, predict);
:mod:`~bnncl.service.inbox` the incoming folder; :mod:`~bnncl.service.learn`,
:mod:`~bnncl.service.predict`, :mod:`~bnncl.service.show` the commands. docs/operating-a-device.md
is the operator's page.
"""
