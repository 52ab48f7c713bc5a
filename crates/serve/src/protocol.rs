//! What the server says about itself and its model, the same over both transports: the
//! extensions it advertises, and the model's configuration and statistics in Triton's
//! schemas (the gRPC messages as they are, and their JSON form for HTTP). Both transports import this;
//! it imports neither (only the generated protobuf messages).

use serde_json::{Map, Value, json};

use crate::grpc::inference::{self, *};
use crate::service::{self, Service};

/// The extensions `/v2` and gRPC `ServerMetadata` list.
pub const EXTENSIONS: [&str; 4] = ["binary_tensor_data", "classification", "model_configuration", "statistics"];

/// The model's configuration in Triton's model-configuration schema: the one description
/// of it, which the gRPC `ModelConfig` answers as is and the HTTP config endpoint renders
/// as JSON ([`config_json`]).
pub fn model_configuration(s: &Service) -> ModelConfig {
    let c = &s.config;
    let param = |v: usize| ModelParameter { string_value: v.to_string() };
    ModelConfig {
        name: s.name.clone(),
        platform: s.platform().into(),
        backend: s.platform().into(),
        max_batch_size: c.max_batch as i32,
        input: vec![
            ModelInput {
                name: service::INPUT.into(),
                data_type: DataType::TypeFp32 as i32,
                format: model_input::Format::Nchw as i32,
                dims: vec![3, -1, -1],
                ..Default::default()
            },
            ModelInput {
                name: service::IMAGE.into(),
                data_type: DataType::TypeString as i32,
                dims: vec![1],
                // Triton's way of saying the full shape is [-1], as the metadata has it.
                reshape: Some(ModelTensorReshape { shape: vec![] }),
                optional: true,
                ..Default::default()
            },
        ],
        output: vec![ModelOutput {
            name: service::OUTPUT.into(),
            data_type: DataType::TypeFp32 as i32,
            dims: vec![s.classes as i64],
            ..Default::default()
        }],
        instance_group: vec![ModelInstanceGroup {
            name: "streams".into(),
            kind: model_instance_group::Kind::Cpu as i32,
            count: c.streams as i32,
            ..Default::default()
        }],
        parameters: [
            ("threads_per_stream".to_string(), param(c.threads_per_stream)),
            ("max_queue_images".to_string(), param(c.max_queue_images)),
        ]
        .into_iter()
        .chain(
            s.precision_parameters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v.to_string() })),
        )
        .collect(),
        scheduling_choice: Some(model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
            preferred_batch_size: vec![c.max_batch as i32],
            max_queue_delay_microseconds: c.max_queue_delay.as_micros() as u64,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Triton's model configuration, as its tools read it before they send anything: the
/// protobuf description ([`model_configuration`]) in the JSON form Triton gives it
/// (field names as in the schema, enums by name).
pub fn config_json(s: &Service) -> Value {
    use inference::{DataType, model_config::SchedulingChoice, model_input::Format, model_instance_group::Kind};
    let c = model_configuration(s);
    let data_type = |t: i32| DataType::try_from(t).map_or("TYPE_INVALID", |t| t.as_str_name());
    let inputs: Vec<Value> = c
        .input
        .iter()
        .map(|i| {
            let mut v = json!({ "name": i.name, "data_type": data_type(i.data_type), "dims": i.dims });
            if i.format != Format::None as i32 {
                v["format"] = Format::try_from(i.format).map_or("FORMAT_NONE", |f| f.as_str_name()).into();
            }
            if let Some(r) = &i.reshape {
                v["reshape"] = json!({ "shape": r.shape });
            }
            if i.optional {
                v["optional"] = true.into();
            }
            v
        })
        .collect();
    let outputs: Vec<Value> = c
        .output
        .iter()
        .map(|o| json!({ "name": o.name, "data_type": data_type(o.data_type), "dims": o.dims }))
        .collect();
    let groups: Vec<Value> = c
        .instance_group
        .iter()
        .map(|g| {
            let kind = Kind::try_from(g.kind).map_or("KIND_AUTO", |k| k.as_str_name());
            json!({ "name": g.name, "kind": kind, "count": g.count })
        })
        .collect();
    let parameters: Map<String, Value> =
        c.parameters.iter().map(|(k, p)| (k.clone(), json!({ "string_value": p.string_value }))).collect();
    let mut config = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": groups,
        "parameters": parameters,
    });
    if let Some(SchedulingChoice::DynamicBatching(d)) = &c.scheduling_choice {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": d.preferred_batch_size,
            "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
        });
    }
    config
}

/// The model's statistics in Triton's statistics extension: the one description of them,
/// which the gRPC `ModelStatistics` answers as is and the HTTP stats endpoints render as
/// JSON ([`statistics_json`]). See [`crate::metrics::Statistics`] for what
/// each count covers.
pub fn model_statistics(s: &Service) -> ModelStatistics {
    let st = s.metrics.statistics();
    let d = |d: crate::metrics::StatDuration| Some(StatisticDuration { count: d.count, ns: d.ns });
    // Converting inputs and writing outputs are not timed apart from the request: the
    // batches' count with no time, as a backend that has no such phase reports them.
    let unmeasured = crate::metrics::StatDuration { count: st.compute_infer.count, ns: 0 };
    ModelStatistics {
        name: s.name.clone(),
        version: service::VERSION.into(),
        last_inference: st.last_inference_ms,
        inference_count: st.inference_count,
        execution_count: st.execution_count,
        inference_stats: Some(InferStatistics {
            success: d(st.success),
            fail: d(st.fail),
            queue: d(st.queue),
            compute_input: d(unmeasured),
            compute_infer: d(st.compute_infer),
            compute_output: d(unmeasured),
        }),
        batch_stats: vec![],
    }
}

/// Triton's statistics extension: the model's cumulative counts and durations, from the
/// same counters as `/metrics` ([`crate::metrics::Statistics`]), as the JSON form of the
/// gRPC `ModelStatisticsResponse` ([`model_statistics`]).
pub fn statistics_json(s: &Service) -> Value {
    let m = model_statistics(s);
    let duration = |d: Option<inference::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({ "count": d.count, "ns": d.ns })
    };
    let i = m.inference_stats.unwrap_or_default();
    json!({ "model_stats": [{
        "name": m.name,
        "version": m.version,
        "last_inference": m.last_inference,
        "inference_count": m.inference_count,
        "execution_count": m.execution_count,
        "inference_stats": {
            "success": duration(i.success),
            "fail": duration(i.fail),
            "queue": duration(i.queue),
            "compute_input": duration(i.compute_input),
            "compute_infer": duration(i.compute_infer),
            "compute_output": duration(i.compute_output),
        },
        "batch_stats": [],
    }] })
}
