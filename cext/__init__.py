"""iommufs C extensions built with cffi: I/O page tables and walker, client-memory access."""
