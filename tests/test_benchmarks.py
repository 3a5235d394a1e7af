"""The benchmarks' own logic (their speed is measured by running them, never in tests)."""

from benchmarks.kernels import describe, parse_primitives

_LOG = [
    "onednn_verbose,v1,primitive,info,template:timestamp,operation,engine,primitive,implementation,prop_kind,...\n",
    "onednn_verbose,v1,1000.5,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,src:f32::blocked:acdb::f0,"
    ",alg:convolution_direct,mb128_ic16oc16_ih14oh14kh3sh1dh0ph1_iw14ow14kw3sw1dw0pw1,1.25\n",
    "onednn_verbose,v1,1001.0,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,src:f32::blocked:acdb::f0,"
    ",alg:convolution_direct,mb128_ic16oc16_ih14oh14kh3sh1dh0ph1_iw14ow14kw3sw1dw0pw1,0.75\n",
    "onednn_verbose,v1,1001.5,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:cdba::f0,,,16x16x3x3,0.5\n",
    "onednn_verbose,v1,1002.0,primitive,exec,cpu,reorder,jit:blk,undef,src:f32::blocked:cdba::f0,,,128x16x7x7,0.25\n",
    "onednn_verbose,v1,1002.5,graph,exec,cpu,1,dnnl_backend,1.0\n",
    "onednn_verbose,v1,5000.0,primitive,exec,cpu,pooling,jit:avx512_core,forward_training,src:f32,,"
    "alg:pooling_max,mb128ic6_ih28oh14kh2sh2dh0ph0_iw28ow14kw2sw2dw0pw0,9.0\n",
]


def test_kernel_log_is_summed_per_primitive_and_shape_within_the_timed_span():
    found = parse_primitives(_LOG, start=1.0, stop=4.0)  # seconds; the log's stamps are milliseconds
    convolution = found[("convolution", "backward_weights", "16->16 3x3 s1 at 14x14")]
    assert convolution[:2] == [2.0, 2] and convolution[2] == {"jit:avx512_core"}
    reorders = found[("reorder", "", "all layouts")]
    assert reorders[:2] == [0.75, 2] and reorders[2] == {"jit:uni", "jit:blk"}
    assert len(found) == 2  # the graph line and the pooling outside the span are left out


def test_problem_descriptors_read_as_shapes():
    assert describe("convolution", "mb128_ic1oc6_ih28oh28kh5sh1dh0ph2_iw28ow28kw5sw1dw0pw2") == "1->6 5x5 s1 at 28x28"
    assert describe("pooling", "mb128ic6_ih28oh14kh2sh2dh0ph0_iw28ow14kw2sw2dw0pw0") == "6 channels 2x2 at 28x28"
    assert describe("inner_product", "mb128ic784oc120") == "784->120"
    assert describe("gemm_api", "128x120:120x784") == "128x120:120x784"


def test_kernel_table_prints_our_side_alone_without_pytorch():
    from benchmarks.kernels import format_table
    from benchmarks.run import CPU_CASES

    ours = {"rows": [{"kind": "convolution", "propagation": "forward_training", "shape": "16->16 3x3 s1 at 14x14",
                      "ms_per_step": 3.75, "calls_per_step": 4.0, "implementations": ["brg_conv_fwd:avx512_core"]}],
            "step_ms": 28.69}
    table = format_table(CPU_CASES[2], 1, ours, None)
    assert "| convolution forward_training | 16->16 3x3 s1 at 14x14 | brg_conv_fwd:avx512_core | 3.75 | - | - |" in table
    assert "| training step, wall clock | | | 28.69 | | - |" in table
