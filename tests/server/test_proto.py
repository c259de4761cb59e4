"""The API: the generated modules load from the .proto, have the services, and every element is documented."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from mtserve.proto.api import PROTO_FILE, PROTO_ROOT, SERVICE_NAME, pb2, pb2_grpc


def test_generated_from_the_proto_file():
    assert pb2.DESCRIPTOR.name == PROTO_FILE == "mtserve/v1/translation.proto"
    assert pb2.DESCRIPTOR.package == "mtserve.v1"
    assert (PROTO_ROOT / PROTO_FILE).is_file()


def test_service_and_methods():
    service = pb2.DESCRIPTOR.services_by_name["TranslationService"]
    assert service.full_name == SERVICE_NAME
    methods = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods}
    assert methods == {
        "Translate": ("TranslateRequest", "TranslateResponse", False),
        "TranslateStream": ("TranslateRequest", "TranslateStreamResponse", True),
        "ListModels": ("ListModelsRequest", "ListModelsResponse", False),
    }
    assert hasattr(pb2_grpc, "TranslationServiceStub") and hasattr(pb2_grpc, "TranslationServiceServicer")
    assert hasattr(pb2_grpc, "add_TranslationServiceServicer_to_server")


def test_decoding_options_tell_unset_from_zero():
    options = pb2.DecodingOptions(seed=0, beam_size=0)
    assert options.HasField("seed") and options.HasField("beam_size")
    for name in ("max_length", "length_penalty", "num_hypotheses", "sampling_temperature", "sampling_topk",
                 "sampling_topp"):
        assert not options.HasField(name), name
    # Every numeric option has presence; the return_* and replace_unknowns flags are plain flags.
    fields = pb2.DecodingOptions.DESCRIPTOR.fields_by_name
    flags = ("return_scores", "return_alignments", "replace_unknowns")
    assert all(f.has_presence for name, f in fields.items() if name not in flags)


def test_request_and_response_fields():
    request = pb2.TranslateRequest(texts=["a", "b"], model="m", source_language="en", target_language="de",
                                   options=pb2.DecodingOptions(beam_size=4, return_scores=True),
                                   partial_results=True)
    assert pb2.TranslateRequest.FromString(request.SerializeToString()) == request
    result = pb2.TranslationResult(index=1, text="x", score=-1.0, input_tokens=3, output_tokens=2,
                                   hypotheses=[pb2.Hypothesis(text="x", score=-1.0, output_tokens=2)])
    stream = pb2.TranslateStreamResponse(model="m", result=result)
    assert stream.WhichOneof("event") == "result"
    assert pb2.TranslateStreamResponse(partial=pb2.PartialTranslation(index=0, text="x")).WhichOneof("event") == \
        "partial"
    info = pb2.ModelInfo(name="m", architecture=pb2.ModelArchitecture(parameter_count=2**40), is_default=True)
    assert pb2.ListModelsResponse(models=[info]).models[0].architecture.parameter_count == 2**40


def test_every_element_is_documented(tmp_path: Path):
    """Each service, method, message, field and oneof has a leading comment in the .proto."""
    out = tmp_path / "descriptor.pb"
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", "--include_source_info", f"--descriptor_set_out={out}",
                      PROTO_FILE])
    assert rc == 0
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    documented = {tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()}
    missing = []
    for i, message in enumerate(file.message_type):
        elements = [((4, i), message.name)]
        elements += [((4, i, 2, j), f"{message.name}.{f.name}") for j, f in enumerate(message.field)]
        elements += [((4, i, 8, k), f"{message.name}.{o.name}") for k, o in enumerate(message.oneof_decl)
                     if not o.name.startswith("_")]  # "_x": synthetic oneofs of proto3 optional fields
        missing += [name for path, name in elements if path not in documented]
    for i, service in enumerate(file.service):
        if (6, i) not in documented:
            missing.append(service.name)
        missing += [f"{service.name}.{m.name}" for j, m in enumerate(service.method) if (6, i, 2, j) not in documented]
    assert not missing, f"undocumented: {missing}"


def test_import_leaves_sys_path_alone():
    code = (
        "import sys; before = list(sys.path); import mtserve.proto.api as api; "
        "added = [p for p in sys.path if p not in before]; "
        "assert str(api.PROTO_ROOT) not in sys.path, sys.path; "
        "assert all(p.endswith('grpc_tools/_proto') for p in added), added"  # grpcio-tools' own include
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr


def test_loads_from_an_installed_layout(tmp_path: Path):
    """As in site-packages: mtserve/proto/{__init__,api}.py and mtserve/proto/mtserve/v1/*.proto, no editable hook."""
    package = tmp_path / "mtserve" / "proto"
    (package / "mtserve" / "v1").mkdir(parents=True)
    for name in ("__init__.py", "api.py"):
        (package / name).write_bytes((PROTO_ROOT / name).read_bytes())
    (package / PROTO_FILE).write_bytes((PROTO_ROOT / PROTO_FILE).read_bytes())
    code = (
        "import sys; from mtserve.proto.api import pb2, pb2_grpc, PROTO_ROOT; "
        f"assert str(PROTO_ROOT) == {str(package)!r}, PROTO_ROOT; "
        "assert pb2_grpc.TranslationServiceStub and pb2.TranslateRequest(texts=['x']).texts == ['x']"
    )
    # -S: no site processing, so the editable install's import hook is absent; grpc comes from site-packages.
    paths = [str(tmp_path), *site.getsitepackages()]
    proc = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {paths!r}\n{code}"],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
