"""Host networking on every agent: bridge networks, published ports, legacy links, the embedded DNS.

:class:`~agent.network.controller.NetworkController` is the entry point; drivers implement
:class:`~agent.network.driver.NetworkDriver` (``bridge``, ``host``, ``none`` here; ``overlay`` in overlay/).
"""
