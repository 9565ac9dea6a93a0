"""iommufs core: the sans-IO emulation of the iommufd and VFIO-cdev uAPI.

It imports neither the FUSE binding nor trio. The transport (devfs) hands it
decoded requests through :class:`core.emulator.Emulator` and gets a result or a
:class:`core.errors.UapiError` back.
"""
