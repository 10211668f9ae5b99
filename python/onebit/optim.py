"""onebit.Lamb, onebit.OnebitLamb, onebit.OnebitAdam: torch.optim optimizers over onebit's core.

Each step takes every parameter's .grad as this rank's LOCAL gradient and does all communication
itself over torch.distributed (no DDP, no gradient averaging by the caller).
"""
import contextlib
import numbers
import warnings

import torch
import torch.distributed as dist

from . import _onebit

_UNSET = object()


def _device_of(param_groups):
    """Where the optimizer's flat buffers live: the parameters' device. A build with CUDA keeps them
    on the parameters' GPU, so all must share one device; a build without keeps them on the CPU."""
    devices = sorted({str(p.device) for group in param_groups for p in group["params"]})
    if len(devices) > 1 and _onebit.built_with_cuda:
        raise ValueError("onebit: the parameters are on %s; one optimizer takes parameters on one device "
                         "(all on the CPU or all on one GPU)" % ", ".join(devices))
    return torch.device(devices[0] if len(devices) == 1 and _onebit.built_with_cuda else "cpu")


def _communicator(process_group, timeout, device):
    """The process group the optimizer talks over, as a onebit Communicator, for flat buffers on
    `device`. A onebit Communicator (e.g. _onebit.nccl_communicator) is taken as it is."""
    if isinstance(process_group, _onebit.Communicator):
        return process_group
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return _onebit.single_rank_communicator()
        process_group = dist.distributed_c10d._get_default_group()
    if process_group is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError("onebit: this rank is not a member of the given process_group")
    if dist.get_backend(process_group) != "nccl":
        return _onebit.c10d_communicator(process_group, timeout, "cpu")
    if device.type == "cuda":
        # Device buffers straight to NCCL, no host staging.
        return _onebit.c10d_device_communicator(process_group, timeout, str(device))
    # NCCL takes device tensors: host buffers are staged through this rank's GPU.
    return _onebit.c10d_communicator(process_group, timeout, "cuda:%d" % torch.cuda.current_device())


_watch_count = [0]  # communicators watched by this process so far: each gets its own keys in the store


def _tcp_store_address():
    """(host, port) of the TCPStore behind the default process group (tcp:// and env:// init), or
    None where the group rendezvoused otherwise (a FileStore, a HashStore)."""
    store = getattr(dist.distributed_c10d, "_get_default_store", lambda: None)()
    while store is not None and not isinstance(store, dist.TCPStore):
        store = getattr(store, "underlying_store", None)
    return (store.host, store.port) if store is not None else None


def _watched(comm, watch):
    """`comm` with its collectives watched through heartbeats in the job's store, so that a rank that
    dies or stalls is named in the other ranks' errors (watch: True finds the default group's
    TCPStore, (host, port) names a store, False leaves comm as it is)."""
    if not (isinstance(watch, bool) or (isinstance(watch, (tuple, list)) and len(watch) == 2)):
        raise ValueError("onebit: watch must be False, True or (host, port), got %r" % (watch,))
    if watch is False or comm.size == 1:
        return comm
    address = _tcp_store_address() if watch is True else watch
    if address is None:
        raise ValueError("onebit: watch=True needs the default process group to have rendezvoused "
                         "through a TCPStore (tcp:// or env://); pass watch=(host, port) of one")
    _watch_count[0] += 1
    return _onebit.watch_ranks(comm, str(address[0]), int(address[1]), "onebit/optimizer%d" % _watch_count[0])


class _OnebitOptimizer(torch.optim.Optimizer):
    """Shared machinery: one onebit engine (flat buffers + core optimizer) per parameter group.

    The parameters move into one flat fp32 buffer per group, and fp32 parameters (and their .grad)
    become views into it; build the optimizer after model.to(...) and do not replace param.data
    afterwards. fp16/bf16 parameters keep an fp32 master copy inside the optimizer. With CUDA
    parameters (all on one GPU) the buffers stay on that GPU and the step runs there (builds with
    CUDA); process_group may then also be a onebit Communicator such as _onebit.nccl_communicator.

    timeout (seconds) bounds every collective: a rank that dies or stalls ends the others' step with
    onebit.Error within it. With watch=True the error also names the lost rank, from heartbeats the
    ranks keep in the TCPStore the default process group rendezvoused through (tcp:// or env://, as
    torchrun does); watch=(host, port) names another TCPStore. It is off by default: on the GPU test
    machine (torch 2.11, a statically linked C++ runtime) its test aborted, not yet understood.

    overlap=True (CPU parameters, a process group any thread may call: Gloo): the exchange of the
    steps that average the gradient (Lamb's; the warmup's) starts during backward, in buckets of
    about bucket_mb MB taken from the last parameter back, each as soon as backward has produced
    its gradients, as DDP does; backward() returns with the average over the ranks in .grad, which
    is where clip_grad_norm_ then clips. The results are those without overlap: bit for bit with a
    16-bit warmup_exchange, and up to the order of the fp32 sums otherwise. For gradient
    accumulation, run the backward passes before the last under `with opt.no_sync():`. The
    compression steps exchange in step() either way. last_overlap: what the last step's overlap did.
    """

    _kind = None
    _options = ()        # hyperparameters passed to the core (besides lr and betas)
    _fixed = ()          # hyperparameters that cannot change after construction
    # torch.cuda.amp / torch.amp.GradScaler: step() unscales the gradients itself and the skip of a
    # step whose gradient overflowed is decided by all ranks together (see step()).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, process_group, momentum_masks, threads, timeout, watch, overlap=False,
                 bucket_mb=4.0):
        self._engines = []
        self._built_with = []
        self._comm = None
        if bucket_mb <= 0:
            raise ValueError("onebit: bucket_mb must be > 0, not %r" % (bucket_mb,))
        self._bucket_bytes = int(bucket_mb * 2**20) if overlap else 0
        self._no_sync = 0
        self.last_overlap = None
        super().__init__(params, defaults)
        given = isinstance(process_group, _onebit.Communicator)
        self._comm = _communicator(process_group, timeout, _device_of(self.param_groups))
        if not given:
            self._comm = _watched(self._comm, watch)
        self._threads = threads
        for group in self.param_groups:
            self._engines.append(self._engine(group))
        self.last_step_skipped = False
        for param, mask in (momentum_masks or {}).items():
            self.set_momentum_mask(param, mask)
        self._arm()

    def _engine(self, group):
        engine = _onebit.Engine(self._kind, group["params"], self._core_options(group, self._threads), self._comm)
        if self._bucket_bytes:
            engine.enable_overlap(self._bucket_bytes)
        self._built_with.append({k: group[k] for k in self._fixed if k in group})  # step() checks them
        return engine

    def _arm(self, engines=None):
        """overlap=True: the next backward may start the exchange (not inside no_sync)."""
        if self._bucket_bytes and not self._no_sync:
            for engine in self._engines if engines is None else engines:
                engine.arm_overlap()

    @contextlib.contextmanager
    def no_sync(self):
        """overlap=True with gradient accumulation, as DDP's no_sync: the backward passes inside only
        accumulate; the next one outside exchanges. Without overlap it changes nothing."""
        self._no_sync += 1
        for engine in self._engines:
            engine.disarm_overlap()
        try:
            yield
        finally:
            self._no_sync -= 1
            self._arm()

    def _check_fixed(self, group, built_with):
        for key, value in built_with.items():
            if group[key] != value:
                raise ValueError("onebit: %s changed from %r to %r after the optimizer was built; only lr may "
                                 "change (a scheduler that cycles momentum, such as OneCycleLR, needs "
                                 "cycle_momentum=False)" % (key, value, group[key]))

    def _core_options(self, group, threads):
        beta1, beta2 = group["betas"]
        options = {k: group[k] for k in self._options}  # keys and values as the registry reads them
        options.update(group.get("auto_freeze", {}))
        options.update(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), threads=int(threads))
        return options

    def add_param_group(self, param_group):
        """As torch.optim: a new group with its own settings (and its own flat buffers and state,
        starting at step 0). Every rank must add the same group at the same step."""
        super().add_param_group(param_group)
        if self._comm is None:  # during __init__: the engines are made once the device is known
            return
        group = self.param_groups[-1]
        try:
            _device_of(self.param_groups)  # one device for all groups (builds with CUDA)
            self._engines.append(self._engine(group))
        except Exception:
            self.param_groups.pop()
            del self._built_with[len(self._engines):]
            raise
        self._arm(self._engines[-1:])

    @property
    def rank(self):
        return self._comm.rank

    @property
    def world_size(self):
        return self._comm.size

    @property
    def comm(self):
        """The Communicator: backend, timeout (seconds) and stats() (bytes sent/received, time)."""
        return self._comm

    @property
    def in_warmup(self):
        return self._engines[0].in_warmup

    @property
    def freeze_step(self):
        """The last warmup step (given, or decided by freeze_step="auto"); None while undecided or for Lamb."""
        step = self._engines[0].freeze_step
        return step if step > 0 else None

    @property
    def skipped_steps(self):
        return self._engines[0].skipped

    def set_momentum_mask(self, param, mask):
        """docs/algorithm.md §4: a 0/1 mask of param's shape applied to its momentum after every compressed
        exchange (for regions whose gradient is always zero); None removes it. OnebitLamb only."""
        for group, engine in zip(self.param_groups, self._engines):
            for i, p in enumerate(group["params"]):
                if p is param:
                    engine.set_momentum_mask(i, None if mask is None else mask.detach())
                    return
        raise ValueError("onebit: set_momentum_mask for a tensor that is not one of the parameters")

    @torch.no_grad()
    def step(self, closure=None, **kwargs):
        """One step on every group; returns the closure's loss. If any rank's gradient held a NaN or
        an infinity, all ranks skip the step together and last_step_skipped is True.

        A parameter whose .grad is None counts as a zero gradient (every rank exchanges the same
        layout): unlike torch.optim's optimizers, its momentum and weight decay still move it.

        Under GradScaler (scaler.step(opt)) the gradients are unscaled here, and a step in which any
        rank's scaled gradient overflowed is skipped on every rank. With torch 1.x's scaler (which
        passes itself as grad_scaler) every rank's scaler then backs off together; torch 2.x's
        scaler hands over only its scale, so each rank's scaler backs off on its own overflows."""
        grad_scaler = kwargs.pop("grad_scaler", None)
        if kwargs:
            raise TypeError("onebit: step() got unexpected keyword arguments %s" % ", ".join(sorted(kwargs)))
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scaler is not None:
            self._unscale_with(grad_scaler)
        elif getattr(self, "grad_scale", None) is not None:
            self._unscale(self.grad_scale)
        skipped = False
        for group, built_with in zip(self.param_groups, self._built_with):
            self._check_fixed(group, built_with)
        if self._bucket_bytes:
            reports = [engine.finish_overlap() for engine in self._engines]
            self.last_overlap = {k: sum(r[k] for r in reports) for k in reports[0]} if reports[0]["buckets"] else None
        for group, engine in zip(self.param_groups, self._engines):
            engine.set_lr(float(group["lr"]))
            skipped |= not engine.step()
        self.last_step_skipped = skipped
        self._arm()
        if grad_scaler is not None:
            self._record_overflow(grad_scaler, skipped)
        return loss

    def _unscale(self, scale):
        """Divides every gradient by GradScaler's scale (as the scaler does: times its fp32 reciprocal)."""
        inv = scale.double().reciprocal().float().reshape(())
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(inv.to(p.grad.device))

    def _unscale_with(self, scaler):
        # torch 1.x's contract: the scaler passes itself; unscale_ records this rank's overflow.
        state = scaler._per_optimizer_states[id(self)]
        if state["stage"].name == "READY":
            scaler.unscale_(self)

    def _record_overflow(self, scaler, skipped):
        # What every rank decided, so that every rank's scaler backs off (or grows) alike.
        found = scaler._per_optimizer_states[id(self)]["found_inf_per_device"]
        if not found:
            found[scaler._scale.device] = torch.zeros(1, device=scaler._scale.device)
        for flag in found.values():
            flag.fill_(1.0 if skipped else 0.0)

    def zero_grad(self, set_to_none=None):
        """Zeroes the gradients. By default (set_to_none None or False) the flat gradients are zeroed in
        one pass and each .grad stays a view into them, which costs nothing at the next step. With
        set_to_none=True every .grad becomes None, as torch.optim does; the next step then copies
        the new gradients into the flat buffer (and a parameter still without one counts as zero)."""
        if set_to_none:
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = None
            return
        for engine in self._engines:
            engine.zero_grad()

    def state_dict(self):
        """param_groups as torch saves them, plus 'onebit': each group's complete core state
        (this rank's error buffers included). Save one file per rank."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        engines = []
        for engine in self._engines:
            tensors, counters = engine.state()
            engines.append({"kind": engine.name, "rank": self.rank, "tensors": tensors, "counters": counters})
        return {"state": {}, "param_groups": groups, "onebit": engines}

    def load_state_dict(self, state_dict, *, reset_errors_on_resize=False):
        """Loads this rank's own state_dict: the run continues bit for bit. A state saved by a
        different number of ranks is an error unless reset_errors_on_resize=True: then any rank's
        file will do, the error buffers restart from zero (with a warning) and the rest carries over."""
        saved = state_dict.get("onebit")
        if saved is None or len(saved) != len(self._engines):
            raise ValueError("onebit: the state_dict is not from a onebit optimizer with %d parameter groups"
                             % len(self._engines))
        for group, packed, engine, core in zip(self.param_groups, state_dict["param_groups"], self._engines, saved):
            if len(packed["params"]) != len(group["params"]):
                raise ValueError("onebit: a saved parameter group has %d parameters, this one %d"
                                 % (len(packed["params"]), len(group["params"])))
            if core["kind"] != engine.name:  # first: another optimizer's settings differ anyway
                raise ValueError("onebit: the state_dict holds a %s state, this is %s" % (core["kind"], engine.name))
            for key in self._fixed:
                if key in packed and packed[key] != group[key]:
                    raise ValueError("onebit: the state_dict was saved with %s=%r, this optimizer has %r"
                                     % (key, packed[key], group[key]))
            saved_world = int(core["counters"]["world_size"])
            resized = saved_world != self.world_size
            if resized and not reset_errors_on_resize:
                raise ValueError("onebit: the state_dict was saved by %d ranks, this run has %d; pass "
                                 "reset_errors_on_resize=True to continue with the error buffers reset "
                                 "(no longer bit for bit)" % (saved_world, self.world_size))
            if not resized and core["rank"] != self.rank:
                raise ValueError("onebit: rank %d's state (its error buffers) loaded on rank %d: load each "
                                 "rank's own file" % (core["rank"], self.rank))
            warning = engine.load_state(core["tensors"], {k: int(v) for k, v in core["counters"].items()},
                                        reset_errors_on_resize)
            if warning:
                warnings.warn(warning, RuntimeWarning, stacklevel=2)
            for key, value in packed.items():
                if key != "params":
                    group[key] = value


def _check_betas(betas):
    if len(betas) != 2:
        raise ValueError("onebit: betas must be a pair (beta1, beta2), got %r" % (betas,))
    return tuple(float(b) for b in betas)


def _freeze_step(freeze_step):
    """'auto' (also for None) or the last warmup step, a positive integer."""
    if freeze_step is None or freeze_step == "auto":
        return "auto"
    if isinstance(freeze_step, bool) or not isinstance(freeze_step, numbers.Integral) or freeze_step < 1:
        raise ValueError("onebit: freeze_step must be a positive integer (the last warmup step) or 'auto', "
                         "got %r" % (freeze_step,))
    return int(freeze_step)


def _exchange(warmup_exchange):
    """The warmup's gradient exchange precision (C++ WirePrecision)."""
    if warmup_exchange not in ("fp32", "bf16", "fp16"):
        raise ValueError("onebit: warmup_exchange must be 'fp32', 'bf16' or 'fp16', got %r" % (warmup_exchange,))
    return warmup_exchange


def _scale_group(scale_group, auto=-1):
    """Elements per compression scale: None means `auto` (-1: decided by the C++ options)."""
    if scale_group is None:
        return auto
    if isinstance(scale_group, bool) or not isinstance(scale_group, numbers.Integral) or scale_group < 0 \
            or scale_group % 64:
        raise ValueError("onebit: scale_group must be 0 (the paper's scales) or a positive multiple of 64, got %r"
                         % (scale_group,))
    return int(scale_group)


def _auto_freeze(auto_freeze):
    """The automatic freeze's bounds and test as flat core options (C++ AutoFreezeOptions)."""
    known = ("min_steps", "max_steps", "window", "tolerance")
    given = dict(auto_freeze or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError("onebit: auto_freeze takes %s, not %s" % (", ".join(known), ", ".join(unknown)))
    return {"auto_" + k: v for k, v in given.items()}


class Lamb(_OnebitOptimizer):
    """LAMB (docs/algorithm.md §3) with the gradient averaged over the process group, no bias correction."""

    _kind = "lamb"
    _options = ("eps", "weight_decay", "max_coeff", "min_coeff", "warmup_exchange")
    _fixed = ("betas", "eps", "weight_decay", "max_coeff", "min_coeff", "warmup_exchange")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_coeff=10.0,
                 min_coeff=0.01, *, warmup_exchange="fp32", process_group=None, threads=1, timeout=60.0,
                 watch=False, overlap=False, bucket_mb=4.0):
        defaults = dict(lr=lr, betas=_check_betas(betas), eps=eps, weight_decay=weight_decay,
                        max_coeff=max_coeff, min_coeff=min_coeff, warmup_exchange=_exchange(warmup_exchange))
        super().__init__(params, defaults, process_group, None, threads, timeout, watch, overlap, bucket_mb)


class OnebitLamb(_OnebitOptimizer):
    """1-bit LAMB: LAMB warmup for steps 1..freeze_step, then compressed momentum.

    freeze_step: the last warmup step, or "auto" (the default): the warmup ends once the second
    moment has stabilised, between auto_freeze's min_steps (10) and max_steps (1000); see
    docs/algorithm.md, "Choosing the freeze step". auto_freeze: {min_steps, max_steps, window,
    tolerance}. refresh_interval and track_scales (None: on with freeze_step "auto", off with a
    given step): past the paper, docs/algorithm.md §10. scale_group: elements per compression scale,
    a multiple of 64 (0: the paper's one scale per worker and per chunk; None: 2048 with freeze_step
    "auto", else 0), §12. warmup_exchange: "fp32", or "bf16"/"fp16"
    for half the warmup's bytes (§11). momentum_masks: {parameter: 0/1 tensor of its shape} (see
    set_momentum_mask)."""

    _kind = "onebit-lamb"
    _options = ("freeze_step", "eps", "weight_decay", "max_coeff", "min_coeff", "coeff_beta", "factor_max",
                "factor_min", "factor_threshold", "refresh_interval", "track_scales", "scale_group",
                "warmup_exchange")
    _fixed = ("freeze_step", "auto_freeze", "betas", "eps", "weight_decay", "max_coeff", "min_coeff",
              "coeff_beta", "factor_max", "factor_min", "factor_threshold", "refresh_interval", "track_scales",
              "scale_group", "warmup_exchange")

    def __init__(self, params, lr=1e-3, freeze_step="auto", betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 max_coeff=10.0, min_coeff=0.01, coeff_beta=0.9, factor_max=4.0, factor_min=0.5,
                 factor_threshold=0.1, process_group=None, *, auto_freeze=None, refresh_interval=None,
                 track_scales=None, scale_group=None, warmup_exchange="fp32", momentum_masks=None, threads=1,
                 timeout=60.0, watch=False, overlap=False, bucket_mb=4.0):
        defaults = dict(lr=lr, freeze_step=_freeze_step(freeze_step), auto_freeze=_auto_freeze(auto_freeze),
                        betas=_check_betas(betas), eps=eps, weight_decay=weight_decay, max_coeff=max_coeff,
                        min_coeff=min_coeff, coeff_beta=coeff_beta, factor_max=factor_max, factor_min=factor_min,
                        factor_threshold=factor_threshold,
                        refresh_interval=-1 if refresh_interval is None else int(refresh_interval),
                        track_scales=-1 if track_scales is None else int(bool(track_scales)),
                        scale_group=_scale_group(scale_group), warmup_exchange=_exchange(warmup_exchange))
        super().__init__(params, defaults, process_group, momentum_masks, threads, timeout, watch, overlap,
                         bucket_mb)


class OnebitAdam(_OnebitOptimizer):
    """1-bit Adam: Adam warmup (no bias correction), then frozen variance and compressed momentum.
    freeze_step, auto_freeze, scale_group and warmup_exchange as for OnebitLamb, except that
    scale_group defaults to 0 (the paper's scales): groups were studied for 1-bit LAMB only."""

    _kind = "onebit-adam"
    _options = ("freeze_step", "eps", "weight_decay", "scale_group", "warmup_exchange")
    _fixed = ("freeze_step", "auto_freeze", "betas", "eps", "weight_decay", "scale_group", "warmup_exchange")

    def __init__(self, params, lr=1e-3, freeze_step="auto", betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 process_group=None, *, auto_freeze=None, scale_group=0, warmup_exchange="fp32", threads=1,
                 timeout=60.0, watch=False, overlap=False, bucket_mb=4.0):
        defaults = dict(lr=lr, freeze_step=_freeze_step(freeze_step), auto_freeze=_auto_freeze(auto_freeze),
                        betas=_check_betas(betas), eps=eps, weight_decay=weight_decay,
                        scale_group=_scale_group(scale_group, auto=0), warmup_exchange=_exchange(warmup_exchange))
        super().__init__(params, defaults, process_group, None, threads, timeout, watch, overlap, bucket_mb)
