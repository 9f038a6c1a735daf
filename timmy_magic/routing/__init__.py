"""The router: plan, try providers in order, retry, break circuits, gate the cloud, monitor health."""
