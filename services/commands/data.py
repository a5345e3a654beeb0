"""`mrdiff data ...` (synthetic banks, banks of a site's own scans, splits) and `sample-data`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

data_app = typer.Typer(
    help="Training data: synthetic head-slice banks, previews, benchmark splits.",
    no_args_is_help=True,
)


@data_app.command("build-bank")
def build_bank_command(
    directory: Annotated[Path, typer.Argument(help="folder to create (shards + manifest.json)")],
    n: Annotated[int, typer.Option(help="number of slices")] = 20000,
    seed: Annotated[int, typer.Option(help="slice i uses default_rng([seed, i])")] = 0,
    size: Annotated[int, typer.Option(help="matrix size (square)")] = 128,
    workers: Annotated[int, typer.Option(help="processes (1-2 on a shared machine)")] = 2,
    shard_size: Annotated[int, typer.Option(help="slices per shard file")] = 1000,
    folds: Annotated[
        float, typer.Option(help="chance a tissue-map slice gets cortical sulci (0-1)")
    ] = 0.0,
    atrophy: Annotated[
        float, typer.Option(help="chance a tissue-map slice gets widened CSF spaces (0-1)")
    ] = 0.0,
    dwi: Annotated[
        float, typer.Option(help="chance a slice gets a diffusion b=0 contrast (0-1)")
    ] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bank")] = False,
) -> None:
    """Synthesize a bank of complex head slices from the training templates."""
    from services.recon.data.bank import build_bank
    from services.recon.data.synthesis import SliceVariations

    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        typer.echo(f"{done}/{total} slices, {elapsed:.0f} s, {done / elapsed:.1f} slices/s")

    summary = build_bank(
        directory,
        n,
        seed,
        size,
        workers=workers,
        shard_size=shard_size,
        variations=SliceVariations(folds, atrophy, dwi),
        overwrite=overwrite,
        progress=report,
    )
    typer.echo(
        f"wrote {summary.n} slices in {summary.shards} shards to {summary.directory} in "
        f"{summary.seconds:.1f} s ({summary.slices_per_second:.1f} slices/s)"
    )


@data_app.command("import-bank")
def import_bank_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="fully sampled scans: k-space HDF5, NIfTI files, DICOM series folders"),
    ],
    out: Annotated[Path, typer.Option("--out", help="bank folder to create (must not hold data)")],
    matrix: Annotated[int, typer.Option(help="matrix size of the bank's slices (square)")] = 128,
    seed: Annotated[int, typer.Option(help="magnitude-only slice i: phase from ([seed, i])")] = 0,
    pixel_mm: Annotated[float, typer.Option(help="pixel size the slices are resampled to")] = 2.0,
    shard_size: Annotated[int, typer.Option(help="slices per shard file")] = 1000,
) -> None:
    """Turn a site's fully sampled scans into a slice bank for `mrdiff train prior`.

    The manifest identifies inputs by content SHA-256 only, never by file name or header.
    """
    from services.recon.data.import_bank import import_bank

    def report(number: int, total: int, source: dict[str, Any]) -> None:
        typer.echo(
            f"input {number}/{total}: {source['slices']} slices, {source['slices_kept']} kept, "
            f"{source['slices_skipped']} skipped (background only); sha256 {source['sha256'][:12]}"
        )

    summary = import_bank(
        inputs, out, matrix, seed, pixel_mm=pixel_mm, shard_size=shard_size, progress=report
    )
    typer.echo(
        f"wrote {summary.n} slices from {summary.sources} inputs in {summary.shards} shards to "
        f"{summary.directory} ({summary.skipped} near-empty slices skipped)"
    )


@data_app.command("preview")
def preview_command(
    output: Annotated[Path, typer.Argument(help="PNG file to write")],
    seed: Annotated[int, typer.Option(help="slice i uses default_rng([seed, i])")] = 0,
    size: Annotated[int, typer.Option(help="matrix size of each slice")] = 128,
    pixel_mm: Annotated[float, typer.Option(help="pixel size in mm")] = 2.0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing file")] = False,
) -> None:
    """Write a 4x4 grid of synthetic slices (magnitude) as a PNG."""
    from services.recon.data.synthesis import example_mosaic
    from services.recon.io import write_png

    mosaic = example_mosaic(seed, size=size, pixel_mm=pixel_mm)
    footer = f"synthetic training slices, seed {seed}, {pixel_mm:g} mm"
    write_png(output, mosaic, window=(0.0, 1.1), footer=footer, overwrite=overwrite)
    typer.echo(f"wrote {output}")


@data_app.command("splits")
def splits_command() -> None:
    """Print the benchmark splits (by source volume) as a Markdown table."""
    from services.recon.data.splits import SPLIT_TABLE_MARKDOWN

    typer.echo(SPLIT_TABLE_MARKDOWN, nl=False)


def sample_data_command(
    directory: Annotated[Path, typer.Argument(help="folder for the HDF5 file and DICOM series")],
    seed: Annotated[int, typer.Option(help="seed for coil noise, mask, phase and UIDs")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace existing files")] = False,
) -> None:
    """Write demo inputs: an undersampled 8-coil fastMRI-style HDF5 and an MR DICOM series."""
    from services.recon.data.sample_data import write_sample_data

    written = write_sample_data(directory, seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {written.kspace_h5}")
    typer.echo(f"wrote {len(written.dicom_files)} DICOM files to {written.dicom_dir}")


def register(app: typer.Typer) -> None:
    """Add the `data` group and the `sample-data` command to ``app``."""
    app.add_typer(data_app, name="data")
    app.command("sample-data")(sample_data_command)


if __name__ == "__main__":
    standalone = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(standalone)
    standalone()
