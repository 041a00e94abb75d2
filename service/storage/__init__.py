"""TimescaleDB storage: migrations, point registry, batched sample writer, token store."""
