"""One rank of a multi-process test: joins the Gloo group, runs a scenario, saves its result."""
import datetime
import faulthandler
import json
import os
import sys

import torch
import torch.distributed as dist

import _scenarios


def main():
    scenario, rank, world, port, outdir, kwargs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
    faulthandler.enable()  # a crash leaves every thread's Python stack in this rank's log
    torch.set_num_threads(1)  # the ranks share two cores
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    result = getattr(_scenarios, scenario)(rank, world, outdir, **kwargs)
    torch.save(result, os.path.join(outdir, "%s.rank%d.pt" % (scenario, rank)))
    print("rank %d: result saved" % rank, flush=True)
    if not (isinstance(result, dict) and result.get("group_broken")):
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
