"""The ``proxy-router`` command: a router (``--role provider|consumer``) and the
operator commands (deploy, provider, model, bid, session, earnings, wallet).

Modules: ``app`` (the parser tree, dispatch, exit codes), ``context`` (settings,
chain connections, one-line failures), ``output`` (tables, ``--json``), ``units``
(MOR/ETH amounts), ``contract`` (contract calls beyond ``Marketplace``'s),
``deploy``, ``market`` (provider, model, bid), ``sessions`` (session, earnings) and
``wallet``.
"""

from proxy_router.cli.app import main

__all__ = ["main"]
