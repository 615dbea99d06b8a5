"""Beam's DaskRunner with the translation fixes this pipeline needs (Beam 2.77).

Written to be proposed upstream as it stands. Each fix names the bug of the stock runner
(``apache_beam.runners.dask``) it removes; every one is silent there, or fails the graph:

1. Read: the ``_Read`` that the runner substitutes for ``beam.io.Read`` has no translation, so
   any pipeline reading files fails while its graph is built. Here a source is split on the
   client and each split is read by one task.
2. Tagged outputs: a ParDo's bag holds all of its outputs and every consumer reads that bag,
   so ``.with_outputs()`` sends every element to every tag. Here each consumer reads its tag.
3. ``finish_bundle``: a bundle's results were collected before ``finish_bundle`` ran, so what a
   DoFn emits there (``BatchElements``' last batch, sinks' write results) was lost.
4. Leaves: only the last bag of the graph was computed, so a second sink branch never ran.
   Here every leaf is computed.
5. Side inputs: each task computed its side inputs again inside the task, so a side input that
   is not deterministic (a temp dir, TFT's analyzer outputs) differed between tasks. Here a
   side input is a task dependency, computed once.
6. Shuffles: a GroupByKey is a ``Bag.groupby`` whose shuffle method Dask picks when the graph
   is built: ``disk`` (files under the client's temp dir, appended to by every worker) unless
   a distributed client is already the default. Here it is always ``tasks``: through the
   cluster, whatever the order in which the graph and the client are made (the stock runner
   is safe only because it makes its client first).
7. Shard order: a file sink (``WriteToText``, ``WriteToTFRecord``... without ``num_shards``)
   writes a temp file per bundle named by a random UUID, and numbers the shards in the order of
   those names, so the shards of the same records came in another order every run (and a
   reader of ``shard-*`` read them in that order). Here a bundle's temp files are named first
   by the bundle's index, so shard ``i`` holds the ``i``-th bundle: the records in the order
   the DirectRunner writes them (its single bundle), split at bundle boundaries.

Operations: the module must be importable on the scheduler and the workers (they unpickle its
functions); a run closes its ``Client`` when it ends; ``--dask_run_timeout`` bounds a run, so a
hung cluster is an error instead of a wait without end.
"""
from __future__ import annotations

import math
import uuid

import dask
import dask.bag as db
import dask.distributed as ddist
from apache_beam import DoFn, TaggedOutput, pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.io.iobase import _WriteBundleDoFn
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as evaluator
from apache_beam.runners.dask.overrides import _Read, dask_overrides
from apache_beam.transforms.sideinputs import SideInputMap

from pipeline.preflight import UserError

MIN_BUNDLE_BYTES = 1 << 20  # a source splits into bundles of at least this many bytes
MAX_SPLITS_PER_SOURCE = 64  # beyond its files, a source splits into about this many bundles


class DaskRunOptions(PipelineOptions):
    """The options this runner adds to Beam's ``DaskOptions``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dask_run_timeout", type=float, default=None,
                            help="seconds a pipeline may run on the cluster; none: no bound")


def _read_splits(bundles) -> list:
    """Fix 1: read each split of a source (a ``SourceBundle``) in the task that holds it."""
    out = []
    for bundle in bundles:
        tracker = bundle.source.get_range_tracker(bundle.start_position, bundle.stop_position)
        out.extend(bundle.source.read(tracker))
    return out


class Read(evaluator.DaskBagOp):
    """Fix 1: ``_Read`` as one partition per split of its bounded source."""

    def apply(self, input_bag, side_inputs=None) -> db.Bag:
        source = self.transform.source
        size = source.estimate_size() or 0
        desired = max(MIN_BUNDLE_BYTES, math.ceil(size / MAX_SPLITS_PER_SOURCE))
        splits = list(source.split(desired_bundle_size=desired))
        return db.from_sequence(splits, npartitions=max(1, len(splits))).map_partitions(
            _read_splits)


def _of_tag(items, tag) -> list:
    """Fix 2: the elements of one output of a multi-output ParDo's bag."""
    if tag is None:
        return [item for item in items if not isinstance(item, TaggedOutput)]
    return [item.value for item in items if isinstance(item, TaggedOutput) and item.tag == tag]


def _drained(partition) -> list:
    return []


def _concat(partitions) -> list:
    return [item for partition in partitions for item in partition]


class _Materialized:
    """A computed side input as the windowed iterable ``SideInputMap`` reads."""

    def __init__(self, values, window_fn):
        self.values, self.window_fn = values, window_fn

    def __iter__(self):
        return (evaluator.get_windowed_value(value, self.window_fn) for value in self.values)


def _run_bundle(items, fn, label, window_fn, args, kwargs, views, *side_values) -> list:
    """Fixes 2, 3, 5: one bundle of a ParDo, with receivers of its own, every output tag kept,
    ``finish_bundle``'s outputs included and side inputs given already computed."""
    receivers = evaluator.OneReceiver()
    handler = _OutputHandler(
        window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False)
    side_inputs = [SideInputMap(view, options, _Materialized(values, mapping))
                   for (view, options, mapping), values in zip(views, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn), handler, context=DoFnContext(label, state=None),
        side_inputs=side_inputs, input_args=args, input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return [TaggedOutput(out.tag, out.value.value) if isinstance(out, TaggedOutput)
            else out.value for out in receivers.values]


class _OrderedWriteBundleDoFn(_WriteBundleDoFn):
    """Fix 7: Beam's per-bundle writer whose temp files sort by bundle index, then by the
    order in which the bundle opened them (a writer at capacity is followed by another)."""

    def __init__(self, sink, bundle: int):
        super().__init__(sink)
        self.bundle, self.opened = bundle, 0

    def process(self, element, init_result):
        if self.writer is None:
            uid = f"{self.bundle:08d}-{self.opened:08d}-{uuid.uuid4().hex}"
            self.writer, self.opened = self.sink.open_writer(init_result, uid), self.opened + 1
        yield from super().process(element, init_result)


def _run_write_bundle(items, bundle: list[int], fn, *rest) -> list:
    """Fix 7: one bundle of a file sink's write, its temp files named by its index
    (``bundle``: the matching partition of a bag of indexes)."""
    return _run_bundle(items, _OrderedWriteBundleDoFn(fn.sink, bundle[0]), *rest)


class ParDo(evaluator.DaskBagOp):
    """A ParDo whose side inputs (``(AsSideInput, bag)`` pairs) are task dependencies; a file
    sink's writes know their bundle's index (fix 7)."""

    def apply(self, input_bag, side_inputs=None) -> db.Bag:
        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
        views = [(type(si), si._view_options(), si._window_mapping_fn)
                 for si, _ in side_inputs or ()]
        computed = [dask.delayed(_concat)(bag.to_delayed(optimize_graph=False))
                    for _, bag in side_inputs or ()]
        bundles = input_bag.map(evaluator.get_windowed_value, window_fn)
        rest = (transform.label, window_fn, list(args), kwargs, views, *computed)
        if type(transform.fn) is not _WriteBundleDoFn:
            return bundles.map_partitions(_run_bundle, transform.fn, *rest)
        indexes = db.from_sequence(range(bundles.npartitions), npartitions=bundles.npartitions)
        return bundles.map_partitions(_run_write_bundle, indexes, transform.fn, *rest)


TRANSLATIONS = {**evaluator.TRANSLATIONS, _Read: Read, evaluator.apache_beam.ParDo: ParDo}


class _BagVisitor(PipelineVisitor):
    """Beam's transforms as bags; consumers read their own output tag (fix 2)."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs, self.bags, self.consumed = bag_kwargs, {}, set()

    def _bag_of(self, pcoll):
        producer = pcoll.producer
        self.consumed.add(producer)
        bag = self.bags.get(producer)
        if bag is not None and len(producer.outputs) > 1:
            return bag.map_partitions(_of_tag, pcoll.tag)
        return bag

    def visit_transform(self, node) -> None:
        op = TRANSLATIONS.get(node.transform.__class__, evaluator.NoOp)(
            node, bag_kwargs=self.bag_kwargs)
        bags = [None if isinstance(value, pvalue.PBegin) else self._bag_of(value)
                for value in node.inputs]
        single = len(bags) == 1 and not isinstance(op, evaluator.Flatten)
        sides = [(si, self._bag_of(si.pvalue)) for si in node.side_inputs]
        self.bags[node] = op.apply(input_bag=bags[0] if single else (bags or None),
                                   side_inputs=sides or None)

    def leaves(self) -> list[db.Bag]:
        """Fix 4: every bag that no transform reads, each reduced to nothing."""
        return [bag.map_partitions(_drained) for node, bag in self.bags.items()
                if node not in self.consumed and isinstance(bag, db.Bag)]


class DaskClusterTimeout(UserError, TimeoutError):
    """A run that did not finish within ``--dask_run_timeout``: told in one line (upstream it
    would be a ``TimeoutError`` alone; ``UserError`` is this project's one-line error)."""


class DaskRunResult(beam_dask.DaskRunnerResult):
    """Closes its client when the run ends, and bounds the wait by ``--dask_run_timeout``."""

    timeout: float | None = None

    def wait_until_finish(self, duration=None) -> str:
        if duration is None and self.timeout:
            duration = self.timeout * 1000
        try:
            return super().wait_until_finish(duration)
        except TimeoutError as error:
            self.client.cancel(self.futures)
            raise DaskClusterTimeout(
                f"the Dask cluster at {self.client.scheduler.address} did not finish a Beam "
                f"component within {duration / 1000:g} s (--dask-timeout): a worker hung or "
                "was lost") from error
        finally:
            self.client.close()


class DaskRunner(beam_dask.DaskRunner):
    """Executes a pipeline on a Dask distributed cluster, every leaf computed."""

    @staticmethod
    def leaves(pipeline, bag_kwargs: dict) -> list[db.Bag]:
        """The pipeline as bags, one per leaf (fix 4); shuffles through the cluster (fix 6)."""
        pipeline.replace_all(dask_overrides())
        visitor = _BagVisitor(bag_kwargs)
        with dask.config.set({"dataframe.shuffle.method": "tasks"}):
            pipeline.visit(visitor)
        return visitor.leaves()

    def run_pipeline(self, pipeline, options):
        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        leaves = self.leaves(pipeline, bag_kwargs)
        client = ddist.Client(**dask_options)
        try:
            futures = client.compute(dask.optimize(*leaves))
        except BaseException:
            client.close()
            raise
        result = DaskRunResult(client, futures)
        result.timeout = options.view_as(DaskRunOptions).dask_run_timeout
        return result

