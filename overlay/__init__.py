"""Multi-host networking: the VXLAN overlay driver (driver, vxlan, gateway), the peer table and service
discovery fed by the managers' ``peers`` frames (peers), virtual IP load balancing (lb), the conversion of
cluster objects into host networking requests (cluster), and the embedded DNS server (dns)."""
