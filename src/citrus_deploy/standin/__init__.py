"""Stand-ins for what cannot run on these machines, used by the demo and the tests.

`standin.engine`: the Pulumi engine (the program under the SDK's mock runtime, our dynamic
provider in a real provider host over gRPC, random and DigitalOcean faked in `standin.fakes`).
`standin.pg`: a throwaway PostgreSQL from Debian's binaries.
"""
