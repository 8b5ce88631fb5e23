//! Training text-encoder adapters (`adapter.text_encoder_targets`).
//!
//! With adapters in the text encoders the prompt embeddings change at every optimizer step,
//! so they cannot be cached: each step runs both encoders on the training prompts with
//! gradients, exactly as `TextEncoders::encode` does (penultimate hidden states of both side by
//! side, text_encoder_2's projected pooled output), and the batch's cached embeddings are
//! replaced by these. Only the tokenization is cached.

use tch::{Kind, Tensor};

use super::Batch;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::sdxl::pipeline::{PromptEmbeds, TextEncoders};

/// The text encoders of a run that trains their adapters, with the prompts' token ids.
#[derive(Debug)]
pub struct TextTraining {
    pub encoders: TextEncoders,
    instance_ids: (Tensor, Tensor),
    /// The caption files' prompts', in `TrainData::captions` order.
    caption_ids: Vec<(Tensor, Tensor)>,
    /// The class prompt's, with prior preservation.
    class_ids: Option<(Tensor, Tensor)>,
}

impl TextTraining {
    pub fn new(encoders: TextEncoders, cfg: &RunConfig, captions: &[String]) -> Result<Self> {
        // The pooled embedding comes from text_encoder_2's projection: checked once here so
        // that the steps cannot fail.
        if encoders.text_encoder_2.text_projection.is_none() {
            return Err(Error::msg("text_encoder_2 has no projection"));
        }
        let instance_ids = encoders.token_ids(&cfg.instance_prompt())?;
        let class_ids = match &cfg.train.prior_preservation {
            Some(pp) => Some(encoders.token_ids(&cfg.subject.fill(&pp.prompt))?),
            None => None,
        };
        let caption_ids = captions
            .iter()
            .map(|c| encoders.token_ids(c))
            .collect::<Result<_>>()?;
        Ok(TextTraining {
            encoders,
            instance_ids,
            caption_ids,
            class_ids,
        })
    }

    /// The instance prompt's embedding through the encoders as they are now (with
    /// gradients unless the caller disabled them).
    pub fn instance_embeds(&self) -> Result<PromptEmbeds> {
        self.encoders.embed(&self.instance_ids)
    }

    /// Put embeddings computed now, with gradients, in place of the batch's cached ones: the
    /// first `n_instance` rows get the instance prompt's (or their photo's caption's), the rest
    /// the class prompt's.
    pub fn condition(&self, batch: &mut Batch, kind: Kind) {
        let embed = |ids| self.encoders.embed(ids).expect("projection checked in new");
        let total = batch.hidden.size()[0];
        let n = batch.n_instance;
        let inst = embed(&self.instance_ids);
        let (mut hidden, mut pooled) = if batch.captions.iter().all(Option::is_none) {
            (
                vec![inst.hidden.repeat([n, 1, 1])],
                vec![inst.pooled.repeat([n, 1])],
            )
        } else {
            // Each photo's own prompt, each distinct one through the encoders once.
            let own: Vec<PromptEmbeds> = self.caption_ids.iter().map(embed).collect();
            let rows: Vec<&PromptEmbeds> = batch
                .captions
                .iter()
                .map(|c| c.map_or(&inst, |i| &own[i]))
                .collect();
            (
                rows.iter().map(|e| e.hidden.shallow_clone()).collect(),
                rows.iter().map(|e| e.pooled.shallow_clone()).collect(),
            )
        };
        if let Some(ids) = self.class_ids.as_ref().filter(|_| total > n) {
            let class = embed(ids);
            hidden.push(class.hidden.repeat([total - n, 1, 1]));
            pooled.push(class.pooled.repeat([total - n, 1]));
        }
        let device = batch.hidden.device();
        batch.hidden = Tensor::cat(&hidden, 0).to_device(device).to_kind(kind);
        batch.pooled = Tensor::cat(&pooled, 0).to_device(device).to_kind(kind);
    }
}
