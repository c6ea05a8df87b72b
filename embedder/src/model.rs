//! all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling of
//! the last hidden state over real (unpadded) tokens, then L2 normalisation,
//! so cosine similarity is a dot product.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The name stored next to every vector this model makes. Vectors of two
/// models are never compared.
pub const NAME: &str = "all-minilm-l6-v2";
pub const DIMENSIONS: usize = 384;
/// sentence-transformers' `max_seq_length` for this model: longer texts are cut.
const MAX_TOKENS: usize = 256;
/// Texts are run in chunks of similar length so little time goes to padding.
const CHUNK: usize = 32;

pub struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Model {
    pub fn load(dir: &Path) -> Result<Model> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .context("config.json is not a BERT config")?;
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        // SAFETY (of the mmap): the weights file is ours, in the tool cache, and not modified while we run.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)? };
        let bert = BertModel::load(vb, &config).context("loading the BERT weights")?;
        Ok(Model { bert, tokenizer, device })
    }

    /// One unit vector per text, in order.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(CHUNK) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            for (vector, &i) in self.embed_chunk(&batch)?.into_iter().zip(chunk) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    fn embed_chunk(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let ids: Vec<Tensor> =
            encodings.iter().map(|e| Tensor::new(e.get_ids(), &self.device)).collect::<Result<_, _>>()?;
        let masks: Vec<Tensor> =
            encodings.iter().map(|e| Tensor::new(e.get_attention_mask(), &self.device)).collect::<Result<_, _>>()?;
        let ids = Tensor::stack(&ids, 0)?;
        let mask = Tensor::stack(&masks, 0)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &token_types, Some(&mask))?; // (batch, tokens, 384)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, tokens, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, 384)
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (batch, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    //! Needs the model: set `EMBEDDER_MODEL_DIR` (xtask does). Skipped otherwise.
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn related_sentences_are_closer_and_vectors_are_unit_length() {
        let Some(dir) = std::env::var_os("EMBEDDER_MODEL_DIR") else {
            eprintln!("EMBEDDER_MODEL_DIR is not set: skipped");
            return;
        };
        let model = Model::load(Path::new(&dir)).expect("model loads");
        let texts: Vec<String> =
            ["keep my fish warm", "Aquarium heater 50 W, adjustable thermostat", "Dog lead, red leather, 2 m"]
                .map(String::from)
                .to_vec();
        let v = model.embed(&texts).expect("embeds");
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|x| x.len() == DIMENSIONS));
        assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-4);
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.1, "{} vs {}", dot(&v[0], &v[1]), dot(&v[0], &v[2]));
        // Batched and single embeddings agree (padding does not leak in).
        let single = model.embed(&texts[1..2]).expect("embeds");
        assert!(dot(&single[0], &v[1]) > 0.999);
    }
}
