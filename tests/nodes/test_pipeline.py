"""default_pipeline.star and job.star: RELION 5 layout, old formats, byte-stable round trips."""
from __future__ import annotations

from pathlib import Path

import pytest

from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import JobStar, read_job_star, write_job_star
from emclass2d.nodes.graph.pipeline import Node, Pipeline, Process, read_pipeline, write_pipeline
from emclass2d.nodes.io.star import StarFileError

# Hand-written from RELION's ``PipeLine::write`` and node type labels in RELION 5's exact layout.
RELION5 = """
# version 50001

data_pipeline_general

_rlnPipeLineJobCounter                      4
 

# version 50001

data_pipeline_processes

loop_ 
_rlnPipeLineProcessName #1 
_rlnPipeLineProcessAlias #2 
_rlnPipeLineProcessTypeLabel #3 
_rlnPipeLineProcessStatusLabel #4 
Extract/job001/       None relion.extract  Succeeded 
Class2D/job002/ Class2D/first/ relion.class2d  Succeeded 
Select/job003/       None relion.select.class2dauto    Running 
 

# version 50001

data_pipeline_nodes

loop_ 
_rlnPipeLineNodeName #1 
_rlnPipeLineNodeTypeLabel #2 
_rlnPipeLineNodeTypeLabelDepth #3 
Extract/job001/particles.star ParticleGroupMetadata.star.relion            1 
Class2D/job002/run_it200_data.star ParticleGroupMetadata.star.relion.class2d            1 
Class2D/job002/run_it200_optimiser.star OptimiserData.star.relion.class2d            1 
Select/job003/particles.star ParticleGroupMetadata.star.relion            1 
Select/job003/class_averages.star Image2DGroupMetadata.star.relion.classaverages            1 
Select/job003/rank_optimiser.star OptimiserData.star.relion.select            1 
 

# version 50001

data_pipeline_input_edges

loop_ 
_rlnPipeLineEdgeFromNode #1 
_rlnPipeLineEdgeProcess #2 
Extract/job001/particles.star Class2D/job002/ 
Class2D/job002/run_it200_optimiser.star Select/job003/ 
 

# version 50001

data_pipeline_output_edges

loop_ 
_rlnPipeLineEdgeProcess #1 
_rlnPipeLineEdgeToNode #2 
Extract/job001/ Extract/job001/particles.star 
Class2D/job002/ Class2D/job002/run_it200_data.star 
Class2D/job002/ Class2D/job002/run_it200_optimiser.star 
Select/job003/ Select/job003/particles.star 
Select/job003/ Select/job003/class_averages.star 
Select/job003/ Select/job003/rank_optimiser.star 
 
"""

# As CCP-EM's pipeliner writes it: its own STAR writer (different spacing, no trailing
# blanks), process types with variants, node labels with extra keywords.
PIPELINER = """# version 50001

data_pipeline_general

_rlnPipeLineJobCounter 3

# version 50001

data_pipeline_processes

loop_
_rlnPipeLineProcessName #1
_rlnPipeLineProcessAlias #2
_rlnPipeLineProcessTypeLabel #3
_rlnPipeLineProcessStatusLabel #4
Import/job001/ None relion.importmovies Succeeded
Class2D/job002/ None relion.class2d.vdam Failed

# version 50001

data_pipeline_nodes

loop_
_rlnPipeLineNodeName #1
_rlnPipeLineNodeTypeLabel #2
_rlnPipeLineNodeTypeLabelDepth #3
Import/job001/movies.star MicrographMovieGroupMetadata.star.relion 1
Class2D/job002/run_it200_optimiser.star OptimiserData.star.relion.class2d.vdam 1
Class2D/job002/run_it200_classes.mrcs Image2DStack.mrcs.relion.class2d.classaverages 2

# version 50001

data_pipeline_input_edges

loop_
_rlnPipeLineEdgeFromNode #1
_rlnPipeLineEdgeProcess #2
Import/job001/movies.star Class2D/job002/

# version 50001

data_pipeline_output_edges

loop_
_rlnPipeLineEdgeProcess #1
_rlnPipeLineEdgeToNode #2
Import/job001/ Import/job001/movies.star
Class2D/job002/ Class2D/job002/run_it200_optimiser.star
Class2D/job002/ Class2D/job002/run_it200_classes.mrcs
"""

# RELION 3.1: integer process type/status and node type columns.
RELION31 = """
# version 30001

data_pipeline_general

_rlnPipeLineJobCounter                       3
 

# version 30001

data_pipeline_processes

loop_ 
_rlnPipeLineProcessName #1 
_rlnPipeLineProcessAlias #2 
_rlnPipeLineProcessType #3 
_rlnPipeLineProcessStatus #4 
Extract/job001/       None            5            2 
Class2D/job002/       None            8            4 
 

# version 30001

data_pipeline_nodes

loop_ 
_rlnPipeLineNodeName #1 
_rlnPipeLineNodeType #2 
Extract/job001/particles.star            3 
Class2D/job002/run_it025_optimiser.star            9 
 

# version 30001

data_pipeline_input_edges

loop_ 
_rlnPipeLineEdgeFromNode #1 
_rlnPipeLineEdgeProcess #2 
Extract/job001/particles.star Class2D/job002/ 
 
"""

# RELION 4: labels, but old node type names.
RELION4 = """
# version 30001

data_pipeline_general

_rlnPipeLineJobCounter                       2
 

# version 30001

data_pipeline_processes

loop_ 
_rlnPipeLineProcessName #1 
_rlnPipeLineProcessAlias #2 
_rlnPipeLineProcessTypeLabel #3 
_rlnPipeLineProcessStatusLabel #4 
Extract/job001/       None relion.extract  Succeeded 
 

# version 30001

data_pipeline_nodes

loop_ 
_rlnPipeLineNodeName #1 
_rlnPipeLineNodeTypeLabel #2 
Extract/job001/particles.star ParticlesData.star.relion 
 
"""


def _write(tmp_path: Path, text: str, name: str = "default_pipeline.star") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _sample() -> Pipeline:
    pipe = Pipeline()
    pipe.add_process(Process("Extract/job001/", "relion.extract", L.STATUS_SUCCEEDED))
    pipe.add_output(Node("Extract/job001/particles.star", L.NODE_PARTICLES), "Extract/job001/")
    pipe.add_process(Process("Class2D/job002/", L.PROCESS_CLASS2D, L.STATUS_RUNNING, alias="Class2D/my run/"))
    pipe.add_input(Node("Extract/job001/particles.star", "ignored: existing type wins"), "Class2D/job002/")
    pipe.add_output(Node("Class2D/job002/run_it025_data.star", L.NODE_CLASS2D_DATA), "Class2D/job002/")
    pipe.add_output(Node("Class2D/job002/run_it025_optimiser.star", L.NODE_CLASS2D_OPTIMISER, depth=2), "Class2D/job002/")
    return pipe


def test_write_read_write_is_byte_stable(tmp_path):
    pipe = _sample()
    first = tmp_path / "a.star"
    write_pipeline(first, pipe)
    again = read_pipeline(first)
    assert again == pipe
    second = tmp_path / "b.star"
    write_pipeline(second, again)
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert text.count("# version 50001") == 5
    assert '"Class2D/my run/"' in text  # blanks quoted, as RELION


def test_relion5_file_reads_and_rewrites_identically(tmp_path):
    path = _write(tmp_path, RELION5)
    pipe = read_pipeline(path)
    assert pipe.job_counter == 4
    assert [p.name for p in pipe.processes] == ["Extract/job001/", "Class2D/job002/", "Select/job003/"]
    assert pipe.process("Class2D/job002/").alias == "Class2D/first/"
    assert pipe.process("Extract/job001/").alias is None
    assert pipe.process("Select/job003/").type_label == "relion.select.class2dauto"
    assert pipe.process("Select/job003/").status == L.STATUS_RUNNING
    assert pipe.node("Select/job003/class_averages.star").type_label == L.NODE_CLASS_AVERAGES
    assert pipe.consumers_of("Class2D/job002/") == ["Select/job003/"]
    assert pipe.producer_of("Class2D/job002/run_it200_optimiser.star") == "Class2D/job002/"
    assert [n.name for n in pipe.inputs_of("Select/job003/")] == ["Class2D/job002/run_it200_optimiser.star"]
    out = tmp_path / "out.star"
    write_pipeline(out, pipe)
    assert read_pipeline(out) == pipe
    assert out.read_text().split() == RELION5.split()


def test_pipeliner_file(tmp_path):
    pipe = read_pipeline(_write(tmp_path, PIPELINER))
    assert pipe.job_counter == 3
    assert pipe.process("Class2D/job002/").type_label == "relion.class2d.vdam"
    assert pipe.process("Class2D/job002/").status == L.STATUS_FAILED
    node = pipe.node("Class2D/job002/run_it200_classes.mrcs")
    assert node.type_label == "Image2DStack.mrcs.relion.class2d.classaverages" and node.depth == 2
    assert pipe.input_edges == [("Import/job001/movies.star", "Class2D/job002/")]
    out = tmp_path / "out.star"
    write_pipeline(out, pipe)
    assert read_pipeline(out) == pipe


def test_relion31_integer_columns_are_converted(tmp_path):
    pipe = read_pipeline(_write(tmp_path, RELION31))
    assert [(p.type_label, p.status) for p in pipe.processes] == [("relion.extract", L.STATUS_SUCCEEDED),
                                                                  ("relion.class2d", L.STATUS_ABORTED)]
    assert [n.type_label for n in pipe.nodes] == [L.NODE_PARTICLES, L.NODE_OPTIMISER]
    assert pipe.output_edges == []
    out = tmp_path / "out.star"
    write_pipeline(out, pipe)
    text = out.read_text()
    assert "_rlnPipeLineProcessTypeLabel" in text and "_rlnPipeLineProcessType #" not in text
    assert "# version 50001" in text


def test_relion4_node_labels_are_converted(tmp_path):
    pipe = read_pipeline(_write(tmp_path, RELION4))
    assert pipe.nodes == [Node("Extract/job001/particles.star", L.NODE_PARTICLES, 1)]


def test_relion5_labels_are_not_converted():
    assert L.convert_node_type_label(L.NODE_CLASS2D_DATA) == L.NODE_CLASS2D_DATA
    assert L.convert_node_type_label("ParticlesData.star.relion.class2d") == L.NODE_CLASS2D_DATA


@pytest.mark.parametrize("text, words", [
    ("data_other\n_rlnX 1\n", ["pipeline_general"]),
    (RELION5.replace(" Running ", " Sleeping "), ["row 3", "Sleeping"]),
    (RELION31.replace("           8  ", "          77  "), ["row 2", "_rlnPipeLineProcessType"]),
])
def test_bad_pipeline_files_name_the_problem(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(StarFileError) as err:
        read_pipeline(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_counter_and_subgraph():
    pipe = _sample()
    assert pipe.job_counter == 3
    assert pipe.next_job_name("Class2D") == "Class2D/job003/"
    pipe.job_counter = 1000
    assert pipe.next_job_name("Class2D") == "Class2D/job1000/"
    sub = pipe.subgraph("Class2D/job002/")
    assert [p.name for p in sub.processes] == ["Class2D/job002/"]
    assert {n.name for n in sub.nodes} == {"Extract/job001/particles.star", "Class2D/job002/run_it025_data.star",
                                           "Class2D/job002/run_it025_optimiser.star"}
    assert sub.node("Extract/job001/particles.star").type_label == L.NODE_PARTICLES
    pipe.clear_edges_of("Class2D/job002/")
    assert pipe.node("Class2D/job002/run_it025_data.star") is None
    assert pipe.node("Extract/job001/particles.star") is not None  # still Extract's output


JOB_STAR = """
# version 50001

data_job

_rlnJobTypeLabel             emclass2d.class2d
_rlnJobIsContinue                       1
_rlnJobIsTomo                           0
 

# version 50001

data_joboptions_values

loop_ 
_rlnJobOptionVariable #1 
_rlnJobOptionValue #2 
    do_em        Yes 
    fn_cont         "" 
nr_classes         50 
other_args "--a b" 
 
"""


def test_job_star_relion_layout_and_round_trip(tmp_path):
    job = read_job_star(_write(tmp_path, JOB_STAR, "job.star"))
    assert job == JobStar("emclass2d.class2d", {"do_em": "Yes", "fn_cont": "", "other_args": "--a b",
                                                "nr_classes": "50"}, is_continue=True)
    out = tmp_path / "again.star"
    write_job_star(out, JobStar("emclass2d.class2d", {"nr_classes": "50", "do_em": "Yes", "fn_cont": "",
                                                      "other_args": "--a b"}, True))
    text = out.read_text()
    assert text.split() == JOB_STAR.split()
    names = [line.split()[0] for line in text.splitlines()[-6:-1]]
    assert names == sorted(names)  # alphabetical, as RELION's std::map
    assert read_job_star(out) == job


def test_old_run_job_format(tmp_path):
    path = _write(tmp_path, "job_type == 8\nis_continue == false\nNumber of classes: == 4\n", "run.job")
    job = read_job_star(path)
    assert job.options["Number of classes:"] == "4" and job.is_continue is False
