"""Multi-host publish (issue 21 item 2): one signed version over files on several hosts.

* ``local``: this host's part: hash in place, prove, sign, record its share;
* ``net``: the exchange over the authenticated channel (``publish --gather``
  and ``--contribute-to``);
* the pure checks are ``manifest/gather.py``, the torch transport
  ``hooks/distributed.py``.
"""
