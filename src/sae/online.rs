//! Several SAEs fed by one encoder: each forward pass yields activations of several layers, and
//! each layer's rows go through that layer's mixing buffer into that layer's trainer.

use std::collections::BTreeMap;

use tch::{Device, Tensor};

use super::buffer::MixingBuffer;
use super::config::SaeConfig;
use super::trainer::{SaeSource, SaeTrainer, TrainError};

/// One mixing buffer and one trainer per layer of an encoder.
pub struct LayerTrainers {
    layers: BTreeMap<String, (MixingBuffer, SaeTrainer)>,
}

impl LayerTrainers {
    /// An SAE per `(layer, width)`, all with `config`, each with a buffer of `buffer_rows`.
    pub fn new(
        encoder: &str,
        layers: &[(String, usize)],
        config: &SaeConfig,
        buffer_rows: usize,
        device: Device,
    ) -> LayerTrainers {
        let layers = layers
            .iter()
            .map(|(layer, width)| {
                let source = SaeSource {
                    encoder: encoder.to_string(),
                    layer: layer.clone(),
                };
                let trainer = SaeTrainer::new(config, *width, device, source);
                let buffer = MixingBuffer::new(*width, buffer_rows, config.seed);
                (layer.clone(), (buffer, trainer))
            })
            .collect();
        LayerTrainers { layers }
    }

    /// Adds one forward pass's rows of `layer` and trains on every batch that is ready. Returns
    /// the number of steps taken.
    pub fn push(&mut self, layer: &str, rows: &[f32]) -> Result<usize, TrainError> {
        let (buffer, trainer) = self
            .layers
            .get_mut(layer)
            .unwrap_or_else(|| panic!("no SAE for layer {layer}"));
        buffer.push(rows);
        let batch_size = trainer.sae.config.batch_size;
        let mut steps = 0;
        while !trainer.is_done() {
            let Some(batch) = buffer.pop_when_mixed(batch_size) else {
                break;
            };
            let x = Tensor::from_slice(&batch).reshape([batch_size as i64, -1]);
            trainer.train_step(&x)?;
            steps += 1;
        }
        Ok(steps)
    }

    /// Whether every SAE has taken all its steps.
    pub fn all_done(&self) -> bool {
        self.layers.values().all(|(_, t)| t.is_done())
    }

    /// The trainers, by layer name.
    pub fn trainers(&self) -> impl Iterator<Item = (&str, &SaeTrainer)> {
        self.layers.iter().map(|(l, (_, t))| (l.as_str(), t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_trains_its_own_sae_from_shared_forward_passes() {
        let config = SaeConfig {
            k: 2,
            expansion: 2,
            batch_size: 8,
            steps: 5,
            ..SaeConfig::default()
        };
        let layers = [("0".to_string(), 4), ("1".to_string(), 6)];
        let mut trainers = LayerTrainers::new("enc", &layers, &config, 16, Device::Cpu);
        let mut passes = 0;
        while !trainers.all_done() {
            // One "forward pass" of 4 samples gives both layers' rows.
            trainers.push("0", &[0.5; 16]).unwrap();
            trainers.push("1", &[-0.5; 24]).unwrap();
            passes += 1;
            assert!(passes < 100);
        }
        let done: Vec<(String, usize, i64)> = trainers
            .trainers()
            .map(|(l, t)| (l.to_string(), t.steps_done(), t.sae.d_in))
            .collect();
        assert_eq!(done, vec![("0".into(), 5, 4), ("1".into(), 5, 6)]);
    }
}
