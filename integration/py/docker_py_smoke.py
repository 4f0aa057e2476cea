"""docker-py (the `docker` package from PyPI) against orcad.

Usage: docker_py_smoke.py SOCKET IMAGE. Prints one line per check and exits non-zero on the
first failure, with the reason.
"""
import sys

import docker

sock, image = sys.argv[1], sys.argv[2]
client = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=60)

def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    if not cond:
        sys.exit(1)

check("ping", client.ping() is True)
img = client.images.pull(image)
check("images.pull", image in img.tags, img.tags)
check("images.list", any(image in i.tags for i in client.images.list()))

out = client.containers.run(image, ["echo", "hi from docker-py"], remove=True)
check("containers.run (foreground, remove)", out == b"hi from docker-py\n", out)

c = client.containers.run(image, ["sh", "-c", "echo started; sleep 100"], detach=True, name="py-detached")
names = [x.name for x in client.containers.list()]
check("containers.list", "py-detached" in names, names)
import time
deadline = time.time() + 10
logs = b""
while time.time() < deadline and b"started" not in logs:
    logs = c.logs()
    time.sleep(0.1)
check("container.logs", b"started" in logs, logs)
code, output = c.exec_run(["sh", "-c", "echo from-exec; exit 4"])
check("container.exec_run", code == 4 and output == b"from-exec\n", (code, output))
c.stop(timeout=1)
c.reload()
check("container.stop", c.status == "exited", c.status)
c.remove()
names = [x.name for x in client.containers.list(all=True)]
check("container.remove", "py-detached" not in names, names)
print("docker-py: all checks passed")
