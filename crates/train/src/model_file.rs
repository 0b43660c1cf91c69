//! Model files: a trained model with everything needed to use it (its
//! architecture, its tokenizer, its parameters), as one safetensors file.
//!
//! `crowdtrain train --checkpoint-out FILE` writes one; `crowdtrain sample`
//! and `crowdtrain export` read nothing else. Tensors carry the layout's
//! names and shapes (input-major weights, as trained); the metadata holds
//! the format, the model kind with its sizes (JSON), the tokenizer's
//! `tokenizer.json` (for language models) and the steps trained. Reading
//! treats the file as hostile: a size cap, a known format, a configuration
//! that validates, exactly the layout's tensors, finite values.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::model::{ModelKind, ParamLayout};
use crate::state::{StateHash, params_hash};

/// The one metadata entry (one, so the encoding is deterministic): a
/// JSON [`Header`].
const METADATA_KEY: &str = "crowdtrain";
const FORMAT: &str = "model-file/v1";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    model: ModelKind,
    steps: u64,
    tokenizer: Option<String>,
}

/// Model files larger than this are refused unread.
pub const MODEL_FILE_BYTES_MAX: u64 = 4 << 30;

/// A trained model and what it needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    pub kind: ModelKind,
    /// In the layout's order.
    pub params: Vec<f32>,
    /// The tokenizer's `tokenizer.json`, for a language model.
    pub tokenizer: Option<String>,
    /// Optimizer steps the parameters have seen.
    pub steps: u64,
}

/// Why a model file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("model file is {0} bytes, above the limit of {MODEL_FILE_BYTES_MAX}")]
    TooLarge(u64),
    #[error("not a crowdtrain model file: {0}")]
    Malformed(String),
}

impl ModelFile {
    /// The hash of the parameters, as the protocol names a model.
    pub fn params_hash(&self) -> StateHash {
        params_hash(&crate::build_model(self.kind).name(), &self.params)
    }

    pub fn encode(&self) -> Vec<u8> {
        let model = crate::build_model(self.kind);
        assert_eq!(self.params.len(), model.layout().len(), "parameters follow the layout");
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = model
            .layout()
            .iter()
            .map(|(spec, range)| {
                (spec.name.clone(), spec.shape.clone(), bytemuck::cast_slice(&self.params[range]).to_vec())
            })
            .collect();
        let views = data.iter().map(|(name, shape, bytes)| {
            (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("shape matches data"))
        });
        let header = Header {
            format: FORMAT.to_owned(),
            model: self.kind,
            steps: self.steps,
            tokenizer: self.tokenizer.clone(),
        };
        let metadata = HashMap::from([(
            METADATA_KEY.to_owned(),
            serde_json::to_string(&header).expect("a header serialises"),
        )]);
        safetensors::serialize(views, Some(metadata)).expect("f32 tensors always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ModelFileError> {
        if bytes.len() as u64 > MODEL_FILE_BYTES_MAX {
            return Err(ModelFileError::TooLarge(bytes.len() as u64));
        }
        let malformed = |message: String| ModelFileError::Malformed(message);
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|error| malformed(error.to_string()))?;
        let header: Header = header
            .metadata()
            .as_ref()
            .and_then(|metadata| metadata.get(METADATA_KEY))
            .ok_or_else(|| malformed(format!("no {METADATA_KEY} entry in its metadata")))
            .and_then(|json| {
                serde_json::from_str(json).map_err(|error| malformed(format!("header: {error}")))
            })?;
        if header.format != FORMAT {
            return Err(malformed(format!("format {:?}, expected {FORMAT:?}", header.format)));
        }
        let (kind, steps, tokenizer) = (header.model, header.steps, header.tokenizer);
        if let ModelKind::Gpt(config) = kind {
            config.validate().map_err(|error| malformed(error.to_string()))?;
        }
        if kind.is_language_model() && tokenizer.is_none() {
            return Err(malformed("a language model without its tokenizer".into()));
        }
        let model = crate::build_model(kind);
        let layout = model.layout();
        let tensors = SafeTensors::deserialize(bytes).map_err(|error| malformed(error.to_string()))?;
        if tensors.len() != layout.iter().count() {
            return Err(malformed(format!(
                "{} tensors, {} has {}",
                tensors.len(),
                model.name(),
                layout.iter().count()
            )));
        }
        let params = params_from_safetensors(&tensors, layout).map_err(malformed)?;
        Ok(Self { kind, params, tokenizer, steps })
    }

    /// Writes the file (to a temporary name, then renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        let io = |source| ModelFileError::Io { path: path.display().to_string(), source };
        let partial = path.with_extension("partial");
        std::fs::write(&partial, self.encode()).map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, ModelFileError> {
        let io = |source| ModelFileError::Io { path: path.display().to_string(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MODEL_FILE_BYTES_MAX {
            return Err(ModelFileError::TooLarge(size));
        }
        Self::decode(&std::fs::read(path).map_err(io)?)
    }
}

/// Writes `file`'s language model to `dir` as a PyTorch user expects it:
/// `model.safetensors` with nanoGPT's names and `[out, in]` linear weights,
/// `config.json` (nanoGPT's `GPTConfig` fields) and `tokenizer.json`.
/// Returns the files written.
pub fn export_pytorch(file: &ModelFile, dir: &Path) -> Result<Vec<std::path::PathBuf>, ModelFileError> {
    let ModelKind::Gpt(config) = file.kind else {
        return Err(ModelFileError::Malformed(format!(
            "{} is not a language model; only a gpt exports",
            file.kind
        )));
    };
    let gpt = crate::model::Gpt::new(config);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ModelFileError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors = gpt.pytorch_tensors(&file.params);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, bytemuck::cast_slice(&values).to_vec()))
        .collect();
    let views = bytes.iter().map(|(name, shape, data)| {
        (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data"))
    });
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let weights = safetensors::serialize(views, Some(metadata)).expect("f32 tensors always serialise");
    let paths = [dir.join("model.safetensors"), dir.join("config.json"), dir.join("tokenizer.json")];
    std::fs::write(&paths[0], weights).map_err(io(&paths[0]))?;
    let config_json = serde_json::to_string_pretty(&gpt.pytorch_config()).expect("json serialises");
    std::fs::write(&paths[1], config_json + "\n").map_err(io(&paths[1]))?;
    let tokenizer = file.tokenizer.as_deref().expect("decoded language models have a tokenizer");
    std::fs::write(&paths[2], tokenizer).map_err(io(&paths[2]))?;
    Ok(paths.to_vec())
}

/// The flat vector of `layout` read from `tensors`: one F32 tensor per
/// tensor of the layout, by name and shape, every value finite; else why
/// not. Model files and the coordinator's checkpoints both read with it.
pub fn params_from_safetensors(tensors: &SafeTensors<'_>, layout: &ParamLayout) -> Result<Vec<f32>, String> {
    let mut params = vec![0.0f32; layout.len()];
    for (spec, range) in layout.iter() {
        let tensor = tensors.tensor(&spec.name).map_err(|_| format!("no tensor {}", spec.name))?;
        if tensor.dtype() != Dtype::F32 || tensor.shape() != spec.shape.as_slice() {
            return Err(format!(
                "{} is {:?} {:?}, expected F32 {:?}",
                spec.name,
                tensor.dtype(),
                tensor.shape(),
                spec.shape
            ));
        }
        for (value, chunk) in params[range].iter_mut().zip(tensor.data().chunks_exact(4)) {
            *value = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
    }
    if let Some(index) = params.iter().position(|value| !value.is_finite()) {
        return Err(format!("value {index} is not finite"));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;

    fn sample() -> ModelFile {
        let kind = ModelKind::Gpt(GptConfig { layers: 1, heads: 2, width: 8, context: 4, vocab: 5 });
        let params = crate::build_model(kind).layout().initialize(3);
        ModelFile { kind, params, tokenizer: Some("{\"model\":{}}".into()), steps: 12 }
    }

    #[test]
    fn a_model_file_round_trips_with_its_configuration_and_tokenizer() {
        let file = sample();
        let decoded = ModelFile::decode(&file.encode()).unwrap();
        assert_eq!(decoded, file);
        assert_eq!(file.encode(), file.encode(), "the encoding is deterministic");
        let mlp = ModelFile {
            kind: ModelKind::Mlp,
            params: crate::build_model(ModelKind::Mlp).layout().initialize(0),
            tokenizer: None,
            steps: 0,
        };
        assert_eq!(ModelFile::decode(&mlp.encode()).unwrap(), mlp);
    }

    #[test]
    fn the_export_transposes_linear_weights_and_names_them_as_nanogpt() {
        let file = sample();
        let dir = tempfile::tempdir().unwrap();
        export_pytorch(&file, dir.path()).unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let attn = tensors.tensor("transformer.h.0.attn.c_attn.weight").unwrap();
        assert_eq!(attn.shape(), &[24, 8], "[out, in]");
        let ours = crate::build_model(ModelKind::Gpt(GptConfig {
            layers: 1,
            heads: 2,
            width: 8,
            context: 4,
            vocab: 5,
        }))
        .layout()
        .range_of("h.0.attn.c_attn.weight")
        .unwrap();
        let value = |data: &[u8], index: usize| {
            f32::from_le_bytes(data[4 * index..4 * index + 4].try_into().unwrap())
        };
        // ours[i][o] with i = 3, o = 17 is theirs[o][i].
        assert_eq!(value(attn.data(), 17 * 8 + 3), file.params[ours.start + 3 * 24 + 17]);
        assert_eq!(tensors.tensor("transformer.wte.weight").unwrap().shape(), &[5, 8]);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(config["n_embd"], 8);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tokenizer.json")).unwrap(),
            file.tokenizer.unwrap()
        );
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let bytes = sample().encode();
        assert!(ModelFile::decode(&bytes[..bytes.len() - 4]).is_err());
        assert!(ModelFile::decode(b"not safetensors").is_err());
        let mut poisoned = sample();
        poisoned.params[3] = f32::NAN;
        assert!(
            matches!(ModelFile::decode(&poisoned.encode()), Err(ModelFileError::Malformed(m)) if m.contains("not finite"))
        );
        let mut untokenized = sample();
        untokenized.tokenizer = None;
        assert!(ModelFile::decode(&untokenized.encode()).is_err(), "a language model needs its tokenizer");
        // Another tool's safetensors file.
        let data = vec![0u8; 16];
        let foreign = safetensors::serialize(
            [("x", TensorView::new(Dtype::F32, vec![4], &data).unwrap())],
            None::<HashMap<String, String>>,
        )
        .unwrap();
        assert!(ModelFile::decode(&foreign).is_err());
    }
}
