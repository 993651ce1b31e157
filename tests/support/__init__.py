"""Helpers shared by pbxbrain's test suites (throwaway servers, builders)."""
