# heatrec service image: runs as an unprivileged user; config in /etc/heatrec, spool and state in /var/lib/heatrec.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/heatrec
COPY pyproject.toml README.md ./
COPY service ./service
COPY drivers ./drivers
COPY simulators ./simulators
RUN pip install . \
 && groupadd --system --gid 10001 heatrec \
 && useradd --system --uid 10001 --gid heatrec --home-dir /var/lib/heatrec --shell /usr/sbin/nologin heatrec \
 && mkdir -p /var/lib/heatrec/var/spool /etc/heatrec \
 && chown -R heatrec:heatrec /var/lib/heatrec

# The spool (storage.spool_dir, default var/spool) is relative to the working directory: keep it on a volume.
WORKDIR /var/lib/heatrec
VOLUME ["/var/lib/heatrec"]
USER heatrec:heatrec
EXPOSE 8000 4840
ENTRYPOINT ["heatrec"]
CMD ["run", "-c", "/etc/heatrec/plant.toml"]
