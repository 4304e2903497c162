"""Framework-free stage logic: plain functions and classes with typed options. No Prefect imports here."""
