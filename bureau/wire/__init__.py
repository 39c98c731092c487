"""Every format that crosses a process or machine boundary (WIRE.md), as typed values. Pure."""
